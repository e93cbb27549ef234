"""The quality maps of G-Refine (paper §3.1-3.2): CLIP-Surgery's VVV image tower (Eq. 1),
PQ-Map (Eq. 2-3), prompt parsing into a syntax tree (Eq. 4, Algorithm 1) and AQ-Map (Eq. 5-8)."""
