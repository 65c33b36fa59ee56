"""pixpipe: bulk product-image compression — the library shared by every service."""

__version__ = "0.1.0"
