"""Router initialisation from the dense model (LLaMA-MoE v2 and a data-free variant), instead of the zero gate.

  kmeans_router(x_ND, w1_FD, w3_FD, assign_EF, seed)   k-means of the layer's MLP inputs on calibration data
      into E centroids; centroid c scores expert j by the mean |h_n(c)| of its neurons n (h = silu(w1 c) * (w3 c)),
      and the centroids are matched one-to-one to experts maximising the total score (Hungarian); the router
      row of expert j is its centroid, L2-normalised (logit = |x| cos angle at step 0).
  expert_mean_router(w1_FD, assign_EF)   row j = the mean of expert j's gate-projection (w1) rows,
      L2-normalised: x · row_j is the mean gate pre-activation of the expert's neurons. No data needed.

Legend: N calibration tokens, D hidden, F dense FFN width, E experts, F_e neurons per expert.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ROUTER_INITS = ("zero", "kmeans", "expert-mean")


def expert_scores(centroids_ED: torch.Tensor, w1_FD: torch.Tensor, w3_FD: torch.Tensor,
                  assign_EF: torch.Tensor) -> torch.Tensor:
    """[C, E]: mean |silu(w1 c) * (w3 c)| over each expert's neurons, for every centroid c."""
    c = centroids_ED.double()
    h_CF = (F.silu(c @ w1_FD.double().t()) * (c @ w3_FD.double().t())).abs()
    return torch.stack([h_CF[:, assign_EF[j]].mean(1) for j in range(assign_EF.shape[0])], dim=1)


def match(scores_CE: torch.Tensor) -> torch.Tensor:
    """centroid index of each expert [E], a one-to-one assignment maximising the summed score."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-scores_CE.numpy())
    out = torch.empty(scores_CE.shape[1], dtype=torch.long)
    out[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return out


def kmeans_router(x_ND: torch.Tensor, w1_FD: torch.Tensor, w3_FD: torch.Tensor, assign_EF: torch.Tensor,
                  seed: int) -> torch.Tensor:
    """[E, D] router rows (see the module docstring)."""
    from sklearn.cluster import KMeans

    E = assign_EF.shape[0]
    km = KMeans(n_clusters=E, n_init=4, random_state=seed).fit(x_ND.double().numpy())
    centroids_ED = torch.as_tensor(km.cluster_centers_, dtype=torch.float64)
    of_expert = match(expert_scores(centroids_ED, w1_FD, w3_FD, assign_EF))
    return F.normalize(centroids_ED[of_expert], dim=1).float()


def expert_mean_router(w1_FD: torch.Tensor, assign_EF: torch.Tensor) -> torch.Tensor:
    """[E, D] router rows (see the module docstring)."""
    rows = torch.stack([w1_FD[assign_EF[j]].double().mean(0) for j in range(assign_EF.shape[0])])
    return F.normalize(rows, dim=1).float()
