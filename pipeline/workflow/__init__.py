"""Site workflows: ``workflows/*.yaml`` chains of site steps, cached and resumable, on Dask or Slurm.

- :mod:`pipeline.workflow.spec`: load and validate a workflow file (errors name the line);
- :mod:`pipeline.workflow.steps`: the step kinds (ingest, qc, federated);
- :mod:`pipeline.workflow.plan`: resolve a workflow for a site, content digests, step records;
- :mod:`pipeline.workflow.run`: run what is out of date, in order, resuming after a failure;
- :mod:`pipeline.workflow.cluster`: ``--scheduler`` -> a Dask scheduler or client (dask-jobqueue);
- :mod:`pipeline.workflow.slurm`: sbatch scripts, dependent submission, status.
"""
