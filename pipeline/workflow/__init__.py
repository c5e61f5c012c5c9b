"""Site workflows: ``workflows/*.yaml`` chains of site steps, cached and resumable, on Dask or Slurm.

- :mod:`pipeline.workflow.spec`: load and validate a workflow file (errors name the line);
- :mod:`pipeline.workflow.steps`: the step kinds (ingest, qc, federated);
- :mod:`pipeline.workflow.plan`: resolve a workflow for a site, content digests, step records;
- :mod:`pipeline.workflow.run`: run what is out of date, in order, resuming after a failure;
- :mod:`pipeline.workflow.slurm`: sbatch scripts, dependent submission, status.

``--scheduler`` (a Dask scheduler address, ``slurm`` or ``pbs``) is chosen by
:mod:`pipeline.cluster`, which ``genofed ingest`` uses too.
"""
