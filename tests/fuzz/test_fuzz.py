"""The fuzz reproductions and the fixed-seed fuzz batch (tests/fuzz/fuzz.py) as tests.

The minimal reproductions in tests/fuzz/repro/ (each a mismatch the batch found, each
exact since its cause was fixed) run in `make test`: they are regression tests, judged
as the batches are (a mismatch runs again; it fails only if it recurs every time).

`make test` also runs a fixed-seed batch of TAPTRACE_FUZZ_COUNT programs (300;
TAPTRACE_FUZZ_SEED picks another seed, TAPTRACE_FUZZ_PROFILES a comma-separated
subset) and a random batch for TAPTRACE_FUZZ_SECONDS (120; its seed is printed),
e.g.

    TAPTRACE_FUZZ_COUNT=70 TAPTRACE_FUZZ_SECONDS=0 .venv/bin/python -m pytest -q tests/fuzz

(0 skips a batch.) Every program must leave the live table equal to /proc at every
checkpoint. A program that mismatches runs again alone, up to CONFIRM times: it
fails the test only if it mismatches every time; one that is exact on a rerun (its
mismatch depends on timing) is named in the test's output, not hidden. A failure
names each mismatching program and its first differences (replay one with
`python tests/fuzz/fuzz.py gen --seed S --profile P > f.fz; ... replay f.fz`).
"""

import os
import secrets
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz

REPRO = sorted((Path(__file__).resolve().parent / "repro").glob("*.fz"))
COUNT = int(os.environ.get("TAPTRACE_FUZZ_COUNT", "300") or 0)
SECONDS = float(os.environ.get("TAPTRACE_FUZZ_SECONDS", "120") or 0)
SEED = int(os.environ.get("TAPTRACE_FUZZ_SEED", "20261130"))
PROFILES = os.environ.get("TAPTRACE_FUZZ_PROFILES")
CONFIRM = 2


def run_batch(seed: int, count: int | None = None, seconds: float | None = None,
              profiles=None) -> fuzz.Batch:
    """Programs from `seed`, over the profiles in turn; mismatches confirmed."""
    res = fuzz.batch(seed, count=count, seconds=seconds, profiles=profiles,
                     log=lambda _m: None)
    fuzz.confirm(res, CONFIRM, log=lambda _m: None)
    print(res.summary())                 # shown with -s, and with a failure
    return res


def _check(res: fuzz.Batch) -> None:
    lines = [f"seed {p.seed} {p.profile}: {fuzz.describe(r)}; " + "; ".join(r.detail[:3])
             for p, r in res.failures]
    if res.failures:
        pytest.fail(res.summary() + "\n" + "\n".join(lines), pytrace=False)
    if res.flaky:
        warnings.warn(res.summary().splitlines()[-1].strip(), stacklevel=2)


@pytest.mark.skipif(COUNT <= 0, reason="TAPTRACE_FUZZ_COUNT=0")
def test_fixed_seed_batch():
    _need_root()
    _check(run_batch(SEED, count=COUNT, profiles=PROFILES.split(",") if PROFILES else None))


@pytest.mark.skipif(SECONDS <= 0, reason="TAPTRACE_FUZZ_SECONDS=0")
def test_random_batch():
    """A new seed each run: programs no earlier run tried (the seed is in the output)."""
    _need_root()
    seed = secrets.randbelow(10**6)
    print(f"fuzz: random batch, seed {seed}")
    _check(run_batch(seed, seconds=SECONDS))


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the fuzz programs need root (BPF, /dev/net/tun)")
    if not fuzz.ACTOR_BIN.exists():
        pytest.skip("tests/helpers/bin/fuzzactor is missing (make -C tests/helpers)")


@pytest.mark.parametrize("path", REPRO, ids=[p.stem for p in REPRO])
def test_repro(path):
    """Each regression program, as the batches are judged: one that mismatches runs
    again, CONFIRM times at most, and fails only if it mismatches every time (the
    loss and pause programs depend on timing); one exact on a rerun is a warning."""
    _need_root()
    prog = fuzz.Program.parse(path.read_text())
    first = res = fuzz.run_program(prog)
    for _ in range(CONFIRM):
        if res.exact:
            break
        res = fuzz.run_program(prog)
    assert res.exact, fuzz.describe(first) + "\n" + "\n".join(first.detail[:10])
    if not first.exact:
        warnings.warn(f"{path.stem}: exact only when run again ({fuzz.describe(first)})",
                      stacklevel=2)


def test_program_text_round_trip():
    """A written program reads back as the same steps (what makes repro files replayable),
    and a seed always gives the same program."""
    for profile in fuzz.PROFILES:
        for seed in range(20):
            prog = fuzz.generate(seed, profile)
            again = fuzz.Program.parse(prog.text())
            assert again.steps == prog.steps
            assert (again.profile, again.tracer_args, again.seed) == \
                (prog.profile, prog.tracer_args, prog.seed)
            assert fuzz.generate(seed, profile).text() == prog.text()


def test_repro_files_parse():
    for path in REPRO:
        prog = fuzz.Program.parse(path.read_text())
        assert prog.steps, path
        assert path.read_text().startswith("# cause: "), path
