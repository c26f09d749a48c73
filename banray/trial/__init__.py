"""One trial on Ray: the Tune trainable and its engine choice (trainable), the sessions that run the training
core on a Ray Train worker or in a Tune trial's process, the sweep's warm hosts and its worker slots."""
