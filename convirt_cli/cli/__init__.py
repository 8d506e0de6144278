"""The `convirt` command line: flags, CONVIRT_* variables and convirt.toml become one config per command;
only this part reads the environment and settings files."""

import os

# no pydantic plugin scan (importlib.metadata, ~10 ms) per call: set before pydantic is first used, in either lane
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
