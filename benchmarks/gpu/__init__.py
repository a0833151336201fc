"""The staged GPU check (`benchmarks/gpu_check.sh`), one module per stage: `env`,
`contractions`, `resnet50_step` and `cifar` (which also packs its data, `prepare`)."""
