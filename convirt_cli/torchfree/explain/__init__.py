"""Where in an image a phrase matches: similarity maps over a tower's dense features (BioViL's method), drawn and
measured (evaluate/grounding.py scores them against masks and boxes). Torch-free."""
