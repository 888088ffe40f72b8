"""The ground every floor stands on: the user-error exception, lazy heavy imports, quiet libraries, the strict
recipe section, the run directory's files, PNG figures and what "sharded" means."""
