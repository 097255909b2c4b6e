# One image for the API and the workers; the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    FINETUNE_DATA_DIR=/data HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /srv/finetune

# torch first and pinned, so the layer is reused when only the app changes.
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY app app
COPY worker worker
COPY migrations migrations
RUN pip install --no-cache-dir .

VOLUME /data
EXPOSE 8000
CMD ["finetune", "serve", "--host", "0.0.0.0", "--port", "8000"]
