"""The read side: view tables built from the event log, with tracking."""
