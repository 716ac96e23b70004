"""The paper's training-time studies (issue 9), usable from Python and the CLI alone.

- `data`: labelled image sets (`digits`, `faces`, any ImageFolder directory), seeded splits;
- `train`: SGD training of the ZF family with the paper's filter renormalisation,
  checkpoints per epoch, resumable;
- `evolution`: Fig. 4, the strongest activation of chosen feature maps across checkpoints;
- `convergence`: Fig. 4 as numbers, each layer's top-9 overlap with the final checkpoint's;
- `stride`: Fig. 6, the stride-4 and stride-2 first layers trained alike and compared;
- `ablation`: Table 3, remove or resize layers and retrain;
- `probe`: Table 7, a linear SVM / softmax on each layer's pooled features;
- `store`: the study files on disk (JSON, Markdown, PNG) that the API lists.

No FastAPI here.
"""
