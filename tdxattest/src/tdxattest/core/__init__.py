"""Pure parsers and computations, standard library and `cryptography` only: quotes, TDVF / MRTD /
TD HOB / RTMRs, event logs, the appraisal policy, the `pins` contract, GPU evidence and the workload
manifest. Nothing here imports the rest of tdxattest."""
