"""What every benchmark shares: server processes, the machine, the token sequences, the reports."""
