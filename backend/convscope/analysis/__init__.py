"""The paper's studies beyond single-image inspection (plain Python: no web code here).

- `convscope.analysis.invariance`: Fig. 5, feature distances and class probability
  under vertical translation, scaling and rotation.
- `convscope.analysis.correspondence`: Fig. 8 / Table 1, the Δ consistency of
  occluding the same object part in several images, against random occluders.
- `convscope.analysis.filters`: Fig. 6, the first layer's filters as images, their
  frequency coverage, and dead channels of every convolution.
- `convscope.analysis.features`: feature vectors of any module (4-D maps or the
  2-D penultimate vector) for a batch, shared by the studies above.
"""
