"""Store-and-forward bookkeeping: the queue on /data, its retention, the forward window."""
