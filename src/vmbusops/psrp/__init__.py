"""PSRP client: OutOfProc framing (sans-IO), runspace pool and pipelines over a transport."""
