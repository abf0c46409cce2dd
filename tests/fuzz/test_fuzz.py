"""The fuzz reproductions and the fixed-seed fuzz batch (tests/fuzz/fuzz.py) as tests.

The minimal reproductions in tests/fuzz/repro/ (each a mismatch the batch found, each
exact since its cause was fixed) run in `make test`: they are regression tests.

The fixed-seed batch is not part of `make test` yet (not every program is exact
yet): it runs only when TAPTRACE_FUZZ_COUNT is set (the number of programs;
TAPTRACE_FUZZ_SEED picks another seed, TAPTRACE_FUZZ_PROFILES a comma-separated
subset), e.g.

    TAPTRACE_FUZZ_COUNT=70 .venv/bin/python -m pytest -q tests/fuzz

Every program must leave the live table equal to /proc at every checkpoint; a
failure names each mismatching program and its first differences (replay one with
`python tests/fuzz/fuzz.py gen --seed S --profile P > f.fz; ... replay f.fz`).
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz

REPRO = sorted((Path(__file__).resolve().parent / "repro").glob("*.fz"))
COUNT = int(os.environ.get("TAPTRACE_FUZZ_COUNT", "0") or 0)
SEED = int(os.environ.get("TAPTRACE_FUZZ_SEED", "20261130"))
PROFILES = os.environ.get("TAPTRACE_FUZZ_PROFILES")


def run_batch(count: int, seed: int = SEED, profiles=None) -> fuzz.Batch:
    """`count` programs from `seed`, over the profiles in turn."""
    return fuzz.batch(seed, count=count, profiles=profiles, log=lambda _m: None)


@pytest.mark.skipif(COUNT <= 0, reason="set TAPTRACE_FUZZ_COUNT to run the fuzz batch")
def test_fixed_seed_batch():
    _need_root()
    res = run_batch(COUNT, SEED, PROFILES.split(",") if PROFILES else None)
    lines = [f"seed {p.seed} {p.profile}: {fuzz.describe(r)}; " + "; ".join(r.detail[:3])
             for p, r in res.failures]
    assert not res.failures, res.summary() + "\n" + "\n".join(lines)


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the fuzz programs need root (BPF, /dev/net/tun)")
    if not fuzz.ACTOR_BIN.exists():
        pytest.skip("tests/helpers/bin/fuzzactor is missing (make -C tests/helpers)")


@pytest.mark.parametrize("path", REPRO, ids=[p.stem for p in REPRO])
def test_repro(path):
    _need_root()
    res = fuzz.run_program(fuzz.Program.parse(path.read_text()))
    assert res.exact, fuzz.describe(res) + "\n" + "\n".join(res.detail[:10])


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
