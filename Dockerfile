# rome-tuner on a CUDA PyTorch base. Checkpoints are mounted at /models, never baked in.
#   docker compose build && docker compose up -d
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /app
ENV PYTHONUNBUFFERED=1 TUNER_HOME=/data TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
COPY pyproject.toml README.md ./
COPY tuner ./tuner
COPY studies ./studies
# torch comes from the base image (CUDA build); pip keeps it because it satisfies the range.
RUN pip install --no-cache-dir -e . && mkdir -p /data /models
VOLUME ["/data"]
CMD ["tuner", "--help"]
