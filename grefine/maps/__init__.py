"""Paper §3.1-3.2: the quality maps, PQ-Map (perceptual) and AQ-Map (alignment).

CLIP-Surgery's VVV image tower (Eq. 1, :mod:`~grefine.maps.clip_surgery`), PQ-Map (Eq. 2-3,
:mod:`~grefine.maps.pq_map`), prompt parsing into a syntax tree (Eq. 4, Algorithm 1,
:mod:`~grefine.maps.syntax_tree`), Eq. 5's text features (the authors' 85-template ensemble, cached,
:mod:`~grefine.maps.text_features`) and AQ-Map (Eq. 5-8, :mod:`~grefine.maps.aq_map`)."""
