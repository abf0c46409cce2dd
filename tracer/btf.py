"""A small reader of BTF, the kernel's own type information (stdlib only).

The kernel backend reads a few kernel-internal fields (`file->f_op`, the fd
table's close-on-exec bits, the files of an SCM_RIGHTS message). Their offsets
differ between kernels (`struct file.f_op` is at byte 40 on Debian's 6.1 and 16
on 6.12) and headers that do not match the running kernel compile cleanly and
read the wrong field, so they come from here: the running kernel's BTF
(/sys/kernel/btf/vmlinux), or a module's split BTF on top of it
(/sys/kernel/btf/tun), or the .BTF section of a vmlinux ELF image (tests).

Format: Documentation/bpf/btf.rst (include/uapi/linux/btf.h).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MAGIC = 0xEB9F
SYS_BTF = Path("/sys/kernel/btf")

# BTF_KIND_*
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_QUALIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)
# bytes after the 12-byte common header: fixed, and per vlen item
_EXTRA = {INT: (4, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8),
          FUNC_PROTO: (0, 8), VAR: (4, 0), DATASEC: (0, 12), DECL_TAG: (4, 0),
          ENUM64: (0, 12)}


class BtfError(Exception):
    """BTF missing, malformed, or without the type or member asked for (one line)."""


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int    # 0: not a bitfield


@dataclass(frozen=True)
class Type:
    kind: int
    name: str
    size_or_type: int     # size (INT, STRUCT, UNION, ENUM, FLOAT, DATASEC) or a type id
    vlen: int
    members: tuple[Member, ...] = ()
    array: tuple[int, int] | None = None   # (element type id, number of elements)


class Btf:
    """The types of one BTF blob (with its base, for a module's split BTF)."""

    def __init__(self, data: bytes, base: Btf | None = None, origin: str = "BTF") -> None:
        self.origin = origin
        if len(data) < 24:
            raise BtfError(f"{origin}: too short for a BTF header")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data)
        if magic != MAGIC:
            raise BtfError(f"{origin}: not BTF (magic {magic:#x}, little-endian only)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<4I", data, 8)
        self._strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self._base = base
        # split BTF continues its base's type ids and string offsets
        self._first_id = len(base.types) if base is not None else 1
        self._str_base = len(base._strings) if base is not None else 0
        self.types: list[Type | None] = list(base.types) if base is not None else [None]
        self._parse(data[hdr_len + type_off: hdr_len + type_off + type_len])
        self._by_name: dict[tuple[int, str], list[int]] = (
            {k: list(v) for k, v in base._by_name.items()} if base is not None else {})
        for tid in range(self._first_id, len(self.types)):
            t = self.types[tid]
            if t is not None and t.name:
                self._by_name.setdefault((t.kind, t.name), []).append(tid)

    def _str(self, off: int) -> str:
        if off < self._str_base and self._base is not None:
            return self._base._str(off)
        raw = self._strings
        off -= self._str_base
        end = raw.find(b"\0", off)
        return raw[off:end if end >= 0 else len(raw)].decode("utf-8", "replace")

    def _parse(self, raw: bytes) -> None:
        pos = 0
        while pos + 12 <= len(raw):
            name_off, info, size_or_type = struct.unpack_from("<3I", raw, pos)
            pos += 12
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            fixed, per = _EXTRA.get(kind, (0, 0))
            if kind == 0 or kind > ENUM64:
                raise BtfError(f"{self.origin}: unknown BTF kind {kind} at byte {pos - 12}")
            members: tuple[Member, ...] = ()
            array = None
            if kind in (STRUCT, UNION):
                ms = []
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<3I", raw, pos + 12 * i)
                    bits, size = (m_off & 0xFFFFFF, m_off >> 24) if kflag else (m_off, 0)
                    ms.append(Member(self._str(m_name), m_type, bits, size))
                members = tuple(ms)
            elif kind == ARRAY:
                elem, _index, nelems = struct.unpack_from("<3I", raw, pos)
                array = (elem, nelems)
            pos += fixed + per * vlen
            self.types.append(Type(kind, self._str(name_off), size_or_type, vlen, members,
                                   array))

    # ---- lookups -----------------------------------------------------------

    def find(self, kind: int, name: str) -> int | None:
        """The id of the named type of that kind (a struct with members before a
        forward declaration of it), or None."""
        ids = self._by_name.get((kind, name), [])
        if kind in (STRUCT, UNION):
            ids = [i for i in ids if self.types[i].vlen] or ids
        return ids[0] if ids else None

    def has_func(self, name: str) -> bool:
        """Is `name` a function the kernel kept (not inlined): fentry can attach."""
        return self.find(FUNC, name) is not None

    def resolve(self, type_id: int) -> int:
        """Through typedef, const, volatile, restrict and type tags."""
        seen = 0
        while self.types[type_id] is not None and self.types[type_id].kind in _QUALIFIERS:
            type_id = self.types[type_id].size_or_type
            seen += 1
            if seen > 64:
                raise BtfError(f"{self.origin}: a qualifier loop at type {type_id}")
        return type_id

    def struct_id(self, name: str) -> int:
        tid = self.find(STRUCT, name) or self.find(UNION, name)
        if tid is None:
            raise BtfError(f"{self.origin}: no struct {name}")
        return tid

    def size_of(self, name: str) -> int:
        return self.types[self.struct_id(name)].size_or_type

    def _member(self, tid: int, name: str) -> tuple[int, Member] | None:
        """A member by name, looking into anonymous structs and unions: its bit
        offset from the start of `tid`, and the member."""
        t = self.types[self.resolve(tid)]
        for m in t.members:
            if m.name == name:
                return m.bit_offset, m
        for m in t.members:
            if not m.name:
                inner = self.types[self.resolve(m.type_id)]
                if inner is not None and inner.kind in (STRUCT, UNION):
                    found = self._member(m.type_id, name)
                    if found is not None:
                        return m.bit_offset + found[0], found[1]
        return None

    def member(self, struct_name: str, path: str) -> tuple[int, Member]:
        """`path` ("f_op", "f_path.dentry") inside struct `struct_name`: its bit offset
        from the struct's start, and the last member."""
        tid = self.struct_id(struct_name)
        bits = 0
        found = None
        for part in path.split("."):
            t = self.types[self.resolve(tid)]
            if t is None or t.kind not in (STRUCT, UNION):
                raise BtfError(f"{self.origin}: {struct_name}.{path}: {part!r} is not "
                               f"inside a struct")
            found = self._member(tid, part)
            if found is None:
                raise BtfError(f"{self.origin}: struct {struct_name} has no member {path}")
            bits += found[0]
            tid = found[1].type_id
        assert found is not None
        return bits, found[1]

    def offset_of(self, struct_name: str, path: str) -> int:
        """Byte offset of a (nested) member: offset_of("file", "f_op")."""
        bits, m = self.member(struct_name, path)
        if bits % 8 or m.bitfield_size:
            raise BtfError(f"{self.origin}: {struct_name}.{path} is a bitfield")
        return bits // 8

    def type_size(self, type_id: int) -> int:
        t = self.types[self.resolve(type_id)]
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY:
            elem, n = t.array
            return self.type_size(elem) * n
        return t.size_or_type

    def member_size(self, struct_name: str, path: str) -> int:
        return self.type_size(self.member(struct_name, path)[1].type_id)


def elf_section(path: str | Path, name: str = ".BTF") -> bytes:
    """One section of a 64-bit little-endian ELF file (a vmlinux image)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise BtfError(f"{path}: not a 64-bit little-endian ELF file")
        shoff, = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<3H", head, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
        _n, _t, _fl, _a, str_at, str_size = sections[shstrndx]
        f.seek(str_at)
        names = f.read(str_size)
        for sh_name, _type, _flags, _addr, offset, size in sections:
            if names[sh_name:names.index(b"\0", sh_name)].decode() == name:
                f.seek(offset)
                return f.read(size)
    raise BtfError(f"{path}: no {name} section")


def from_file(path: str | Path, base: Btf | None = None) -> Btf:
    """Raw BTF (/sys/kernel/btf/*) or the .BTF section of an ELF image."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BtfError(f"cannot read {path}: {exc.strerror}") from exc
    if data[:4] == b"\x7fELF":
        data = elf_section(path)
    return Btf(data, base, str(path))


@lru_cache(maxsize=1)
def vmlinux() -> Btf:
    """The running kernel's BTF (needs CONFIG_DEBUG_INFO_BTF)."""
    path = SYS_BTF / "vmlinux"
    if not path.exists():
        raise BtfError(f"{path} is missing: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF)")
    return from_file(path)


def module(name: str) -> Btf:
    """A loaded module's split BTF, on top of the running kernel's."""
    return from_file(SYS_BTF / name, vmlinux())
