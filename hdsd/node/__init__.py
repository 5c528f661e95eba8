"""The node: a trio server accepting mutually authenticated clients."""

from ._bundle import SPEC_FILE as SPEC_FILE
from ._bundle import Bundle as Bundle
from ._bundle import write_cluster as write_cluster
from ._bundle import write_profile as write_profile
from ._config import NodeConfig as NodeConfig
from ._config import load_node_config as load_node_config
from ._server import Node as Node
from ._server import serve_node as serve_node
from ._spec import ClusterSpec as ClusterSpec
from ._spec import NodeSpec as NodeSpec
from ._spec import load_spec as load_spec
from ._spec import parse_spec as parse_spec
from ._spec import spec_from_flags as spec_from_flags
