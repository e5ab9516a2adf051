"""Where results go: the reporter (progress bars and metrics.jsonl), plots and
TensorBoard. The library hands records to a reporter and never prints."""
