"""`n2d2.ConfigSection`: keyword arguments shared between cell constructors."""
from collections import UserDict


class ConfigSection(UserDict):
    """A dict of keyword arguments, used as `Conv(..., **section)`.

    Objects inside are shared by reference: build the section in a function to give each cell
    its own solver or filler.
    """

    def __init__(self, **config_parameters):
        super().__init__(config_parameters)

    def get(self, key=None, default=None):
        if key is None:
            return dict(self.data)
        return self.data.get(key, default)

    def keys(self):
        return self.data.keys()

    def __getitem__(self, key):
        return self.data[key]

    def __str__(self):
        return "ConfigSection(" + ", ".join(f"{k}={v}" for k, v in self.data.items()) + ")"
