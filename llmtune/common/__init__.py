"""The ground every floor stands on: user errors, lazy imports, quiet libraries and the run directory's files.

Also the strict base of every recipe section (section.py), PNG figures (figures.py) and the one meaning of
"sharded" (sharding.py)."""
