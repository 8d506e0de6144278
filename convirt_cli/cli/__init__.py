"""The `convirt` command line: flags, CONVIRT_* variables and convirt.toml become one config per command;
only this part reads the environment and settings files."""
