"""billing-tiers: monthly customer-program levels and member cards from billing extracts."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("billing-tiers")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
