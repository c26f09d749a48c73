"""The training core: one trial's epoch loop, its checkpoints, the session it reports to and the storage it
reads and writes through, as interfaces. It imports torch, numpy, pydantic, pyyaml and Ray-free banray modules
only, so a trial runs wherever PyTorch runs (`banray trial`, a plain Python session, a GPU check machine);
Ray Train and Tune plug in behind its interfaces (banray.trial.sessions, banray.trial.hosts, banray.storage)."""
