"""`python -m tracer` is `taptrace`."""

from .cli import main

main()
