"""The experiments: benchmark rows, methods, the run loop, results, summary, report, plots and ranks."""
