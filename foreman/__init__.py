"""foreman: a transparent gateway in front of one Ollama server.

The public surface: :func:`run` and :func:`open_gateway` (the service),
:class:`Settings` (configuration), :func:`create_app` (the HTTP surface).
"""

from .app import create_app as create_app
from .gateway import Gateway as Gateway
from .service import open_gateway as open_gateway
from .service import run as run
from .settings import Settings as Settings

__version__ = "0.1.0"
