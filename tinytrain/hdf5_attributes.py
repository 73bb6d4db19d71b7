"""Read an HDF5 attribute only once its type class is the expected one: h5py can crash on a damaged type."""

from __future__ import annotations

import h5py
from h5py import h5t

# The HDF5 type class a value of each kind is stored with. A damaged byte in a variable-length string's type makes it
# a variable-length sequence of no valid kind, and h5py (3.16, HDF5 2.0) segfaults reading that.
TYPE_CLASSES = {str: h5t.STRING, int: h5t.INTEGER, float: h5t.FLOAT}


def read_attribute(group: h5py.Group, name: str, kind: type):
    """group.attrs[name], once its HDF5 type class is the one `kind` (str, int or float) is stored with; ValueError
    otherwise."""
    type_class = group.attrs.get_id(name).get_type().get_class()
    if type_class != TYPE_CLASSES[kind]:
        raise ValueError(f"attribute {name!r} has HDF5 type class {type_class}, not that of a {kind.__name__}")
    return group.attrs[name]
