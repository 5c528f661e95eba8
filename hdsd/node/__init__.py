"""The node: a trio server accepting mutually authenticated clients."""

from ._bundle import SPEC_FILE as SPEC_FILE
from ._bundle import Bundle as Bundle
from ._bundle import write_cluster as write_cluster
from ._bundle import write_profile as write_profile
from ._config import NodeConfig as NodeConfig
from ._config import load_node_config as load_node_config
from ._masterkey import keep_old_key as keep_old_key
from ._masterkey import kept_old_keys as kept_old_keys
from ._masterkey import master_key_check as master_key_check
from ._masterkey import node_stopped as node_stopped
from ._masterkey import replace_key_file as replace_key_file
from ._masterkey import set_key_check as set_key_check
from ._masterkey import verify_master as verify_master
from ._objects import NodeObjects as NodeObjects
from ._server import Node as Node
from ._server import serve_node as serve_node
from ._spec import ClusterSpec as ClusterSpec
from ._spec import NodeSpec as NodeSpec
from ._spec import load_spec as load_spec
from ._spec import parse_spec as parse_spec
from ._spec import spec_from_flags as spec_from_flags
