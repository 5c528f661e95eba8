"""The node: a trio server accepting mutually authenticated clients."""

from ._config import NodeConfig as NodeConfig
from ._config import load_node_config as load_node_config
from ._server import Node as Node
from ._server import serve_node as serve_node
