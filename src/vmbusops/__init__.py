"""vmbusops: manage Hyper-V tenant VMs over the VMBus.

Layers, each importing only those below it::

    cli/       command line
    api/       the agent's HTTP API
    engine/    jobs, runs, steps, rate control, journal
    guestops/  what we do to guests: copy in, invoke, restart, wait ready
    psrp/      PSRP client: OutOfProc framing, runspace pool, pipelines, transports
    bundle/    signed job bundles (sans-IO where it can be)
    dsc/       LCM verbose-line parser, MOF helpers
    sim/       the simulated Hyper-V host (its own process)
"""

__version__ = "0.1.0"
