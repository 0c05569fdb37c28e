"""aaclip: AA-CLIP and CLIP-based zero-/few-shot anomaly detection on open_clip.

Data flows one way: records (data) -> method (methods/, backbone) -> maps and scores
(scoring) -> metrics -> results tables and figures (results, analysis) -> notebooks.
"""

__version__ = "0.1.0"
