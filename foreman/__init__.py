"""foreman: a transparent gateway in front of one Ollama server.

The public surface: :func:`run` and :func:`open_gateway` (the service),
:class:`Settings` (configuration), :func:`create_app` (the HTTP surface).
"""

__version__ = "0.2.0"

from .app import create_app as create_app  # noqa: E402
from .gateway import Gateway as Gateway  # noqa: E402
from .service import open_gateway as open_gateway  # noqa: E402
from .service import run as run  # noqa: E402
from .settings import Settings as Settings  # noqa: E402
