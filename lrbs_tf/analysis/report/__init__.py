"""report.md: the document (`document`), its sections (`ratio`, `scaling`) and the shared formatting (`format`)."""
