from mdream.eval.face_embedder import FaceIdentityEmbedder  # noqa: F401  (the model registry loads it from here)
