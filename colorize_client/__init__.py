"""Python client and ``colorize`` CLI for the colorization service's key API (seed 000)."""
from .client import AsyncClient, Client
from .errors import (AuthError, BadImage, ColorizeError, Conflict, NetworkError, NoCredits, NotReady,
                     RateLimited, ServerError)
from .protocol import Account, ColorizeResult, Options, Pricing, Upload
from .retry import NO_RETRIES, RetryPolicy

__all__ = ["Account", "AsyncClient", "AuthError", "BadImage", "Client", "ColorizeError", "ColorizeResult",
           "Conflict", "NO_RETRIES", "NetworkError", "NoCredits", "NotReady", "Options", "Pricing", "RateLimited",
           "RetryPolicy", "ServerError", "Upload"]
