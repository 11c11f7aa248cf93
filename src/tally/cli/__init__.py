"""The command line: thin; translates arguments to the service layer and results to output."""
