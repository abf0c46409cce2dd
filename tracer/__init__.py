"""taptrace: live tracing of Linux TUN/TAP file descriptors and their handoffs."""

__version__ = "0.1.0"
