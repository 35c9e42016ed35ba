"""The guest profiles, as data: what a simulated guest runs (its programs'
mappings, the events it draws and their rates).  Imports nothing of numpy:
``vm info`` and the image format read profiles without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from htabtool.errors import UsageError

# -- profiles -----------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """A program: its mappings' sizes in 64K pages and how much of each is
    resident after exec."""

    text: int
    data: int
    heap: int
    libs: int
    stack: int
    resident: float  # fraction of the mapped pages faulted in at exec


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    rate: float  # events per simulated second
    weights: dict  # event name -> weight
    boot: tuple  # program names started at boot (pid 1 first)
    programs: dict  # name -> Image
    exec_mix: dict  # program name -> weight, for exec events
    vmalloc_pages: int  # per 4G of RAM, at boot
    io_pages: int
    fault_pages: int  # mean pages per fault event
    max_procs: int
    shm_fraction: float = 0.0  # a shared buffer pool, as a fraction of RAM
    shm_backends: int = 0  # processes that map (part of) it
    persistent: tuple = ()  # programs that never exit or exec (server processes)

    def summary(self) -> dict:
        return {"name": self.name, "description": self.description, "rate": self.rate}


_SH = Image(text=6, data=1, heap=2, libs=26, stack=2, resident=0.55)
_PROGRAMS = {
    "init": Image(text=8, data=2, heap=4, libs=30, stack=2, resident=0.55),
    "sh": _SH,
    "sleep": Image(text=2, data=1, heap=1, libs=20, stack=1, resident=0.45),
    "make": Image(text=12, data=3, heap=40, libs=30, stack=2, resident=0.6),
    "gcc": Image(text=40, data=4, heap=16, libs=30, stack=2, resident=0.5),
    "cc1": Image(text=420, data=30, heap=1200, libs=34, stack=4, resident=0.7),
    "as": Image(text=30, data=4, heap=80, libs=34, stack=2, resident=0.6),
    "ld": Image(text=60, data=6, heap=400, libs=34, stack=2, resident=0.6),
    "postgres": Image(text=140, data=12, heap=160, libs=40, stack=4, resident=0.6),
    "psql": Image(text=20, data=2, heap=10, libs=36, stack=2, resident=0.5),
}

PROFILES = {
    "empty": Profile(
        name="empty",
        description="no guest yet: an incoming VM waiting for its state (MMU not ready, vCPUs stopped)",
        rate=0.0,
        weights={},
        boot=(),
        programs={},
        exec_mix={},
        vmalloc_pages=0,
        io_pages=0,
        fault_pages=0,
        max_procs=0,
    ),
    "idle": Profile(
        name="idle",
        description="a booted, idle guest: init and a shell loop forking `sleep 1` once a second",
        rate=6.0,
        weights={"fork": 1, "exec": 1, "exit": 1, "fault": 1, "write": 0.5, "touch": 1.5, "vmalloc": 0.1, "vfree": 0.1},
        boot=("init", "sh"),
        programs=_PROGRAMS,
        exec_mix={"sleep": 1},
        vmalloc_pages=24,
        io_pages=4,
        fault_pages=2,
        max_procs=4,
    ),
    "kernel-build": Profile(
        name="kernel-build",
        description="make -j: fork/exec heavy, short-lived compilers with large heaps",
        rate=120.0,
        weights={
            "fork": 3,
            "exec": 3,
            "exit": 3,
            "fault": 6,
            "write": 3,
            "touch": 3,
            "mmap": 1.5,
            "munmap": 1.5,
            "vmalloc": 0.3,
            "vfree": 0.3,
        },
        boot=("init", "sh", "make"),
        programs=_PROGRAMS,
        exec_mix={"cc1": 5, "gcc": 3, "as": 2, "sh": 3, "ld": 0.3, "make": 0.5},
        vmalloc_pages=48,
        io_pages=4,
        fault_pages=48,
        max_procs=24,
    ),
    "database": Profile(
        name="database",
        description="a database server: a large shared buffer pool resident in many backends, few changes",
        rate=25.0,
        weights={"touch": 8, "write": 3, "fault": 2, "mmap": 0.2, "munmap": 0.2, "fork": 0.1, "exit": 0.1, "exec": 0.1},
        boot=("init", "sh", "postgres"),
        programs=_PROGRAMS,
        exec_mix={"psql": 1},
        vmalloc_pages=32,
        io_pages=8,
        fault_pages=16,
        max_procs=16,
        shm_fraction=0.5,
        shm_backends=6,
        persistent=("postgres",),
    ),
}


def profile_names() -> list[str]:
    return list(PROFILES)


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UsageError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None


__all__ = ["Image", "Profile", "PROFILES", "profile_names", "get_profile"]
