"""Building blocks. Importing this package registers every block letter of the layout grammar."""

from ascan.layers import convnext_block, hierarchical, mbconv, multi_axis  # noqa: F401  (register letters)
from ascan.layers.conv_bn import ConvBN
from ascan.layers.fused_mbconv import FusedMBConv
from ascan.layers.neocell import MultiNeoCell, NeoCell
from ascan.layers.neonext_block import NeoNeXtBlock  # registers N
from ascan.layers.registry import BLOCKS, BlockSpec, get_block, register_block
from ascan.layers.rel_attention import RelAttnBlock  # noqa: F401  (registers the R letter)
from ascan.layers.rel_pos import RelPosBiasTable, relative_position_index, resize_rel_pos_table
from ascan.layers.transformer import ParallelTransformerBlock

__all__ = [
    "BLOCKS", "BlockSpec", "ConvBN", "FusedMBConv", "ParallelTransformerBlock", "RelPosBiasTable",
    "MultiNeoCell", "NeoCell", "NeoNeXtBlock",
    "get_block", "register_block", "relative_position_index", "resize_rel_pos_table",
]
