"""Worker side: mounts policy, path checks, job intake and trainer runs."""
