"""The application layer: whole runs of `dfq synthesize` / `dfq quantize` with their output files.

The library stages (`dfq.synth.synthesize`, `dfq.quant.quantize_`, `dfq.export.export_onnx`,
`dfq.evaluate.evaluate`) know nothing of output directories, recipes or reports; this package
resolves recipes, wires the stages together, and writes what a run leaves behind.
"""
