"""`n2d2.mapping.Mapping`: connection tables for grouped convolutions.

A mapping is a bool Tensor of numpy shape [nb_channels, nb_outputs]: element [c][o] is True
when output o reads input channel c (column o lists the inputs of output map o).
"""
import numpy as np

from n2d2.error_handler import WrongInputType
from n2d2.tensor import Tensor


def _grouped(nb_rows, nb_cols, nb_groups, cols_per_group):
    """rows split in `nb_groups` float-sized groups, each connected to `cols_per_group` columns."""
    table = np.zeros((nb_rows, nb_cols), dtype=bool)
    row_offset, col_offset = 0.0, 0
    for g in range(int(nb_groups)):
        size = (nb_rows - row_offset) / (nb_groups - g)
        if size < 1:
            raise ValueError(f"Mapping: group {g} would have no output ({nb_rows} for {nb_groups} groups)")
        table[int(row_offset):int(row_offset + size), col_offset:col_offset + cols_per_group] = True
        row_offset += size
        col_offset += cols_per_group
    return table


class Mapping:
    """Grouped connection table; give exactly one of `nb_groups`, `nb_channels_per_group`."""

    def __init__(self, nb_groups=None, nb_channels_per_group=None):
        if (nb_groups is None) == (nb_channels_per_group is None):
            raise ValueError("Mapping: give exactly one of nb_groups and nb_channels_per_group")
        for key, value in (("nb_groups", nb_groups), ("nb_channels_per_group", nb_channels_per_group)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise WrongInputType(key, type(value), ["positive int"])
        self._nb_groups = nb_groups
        self._nb_channels_per_group = nb_channels_per_group

    def create_mapping(self, nb_channels: int, nb_outputs: int) -> Tensor:
        """Bool Tensor [nb_channels, nb_outputs] connecting each output to its group's channels.

        Channels are split in G consecutive groups (G = nb_groups, or nb_channels /
        nb_channels_per_group) and outputs in G near-equal consecutive groups. When the channels
        cannot be split that way but the outputs can (the docs' `create_mapping(15, 24)` with 2
        channels per group), the docs' older layout is produced: outputs grouped by
        `nb_channels_per_group`, channels spread over the groups (docs/compatibility.md).
        """
        for key, value in (("nb_channels", nb_channels), ("nb_outputs", nb_outputs)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise WrongInputType(key, type(value), ["int"])
        table = self._table(nb_channels, nb_outputs)
        return Tensor.from_numpy(table)

    def _table(self, nb_channels, nb_outputs):
        if self._nb_groups is not None:
            groups = self._nb_groups
            if nb_channels % groups:
                raise ValueError(f"Mapping: {nb_channels} channels cannot be split in {groups} groups")
            return _grouped(nb_outputs, nb_channels, groups, nb_channels // groups).T
        per_group = self._nb_channels_per_group
        if nb_channels % per_group == 0:
            groups = nb_channels // per_group
            return _grouped(nb_outputs, nb_channels, groups, per_group).T
        if nb_outputs % per_group == 0:
            return _grouped(nb_channels, nb_outputs, nb_outputs // per_group, per_group)
        raise ValueError(f"Mapping: neither {nb_channels} channels nor {nb_outputs} outputs can be split in "
                         f"groups of {per_group}")
