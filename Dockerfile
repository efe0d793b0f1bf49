# The one image every cluster config runs (cluster/aws.yaml, cluster/gcp.yaml, cluster/kuberay/*.yaml):
# Ray's own GPU image at the Ray version constraints.txt pins, the GL libraries the renderer needs, torch and
# every other package at its constraints.txt version, and this repository at /app. From the repository root:
#   docker build -t REGISTRY/uni3d-ray:2.60.0 .
#   docker push REGISTRY/uni3d-ray:2.60.0
# The same image runs on CPU nodes (Mesa renders there) and GPU nodes (torch's CUDA 13 wheels need an NVIDIA
# driver >= 580 on the host).
FROM rayproject/ray:2.60.0-py311-gpu

# pipelines/meshes/render.py renders with moderngl on a standalone EGL context: Mesa's EGL and llvmpipe on CPU
# nodes, NVIDIA's EGL on GPU nodes. glvnd picks the vendor: the NVIDIA entry below names the library the
# container toolkit mounts when the "graphics" capability is asked for (see NVIDIA_DRIVER_CAPABILITIES);
# where that library is absent (CPU nodes) glvnd falls back to Mesa.
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglvnd0 libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /usr/share/glvnd/egl_vendor.d /app \
    && printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_nvidia.so.0"}}\n' \
        > /usr/share/glvnd/egl_vendor.d/10_nvidia.json \
    && chown ray /app
USER ray

# Token authentication is on for every Ray process started from this image: `ray start` refuses to run
# without a token (the configs provide one), and clients in the cluster send it.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    RAY_AUTH_MODE=token \
    RAY_USAGE_STATS_ENABLED=0

WORKDIR /app

# torch first, pinned, as the Makefile does, so nothing installed after it can swap it. PyPI's torch wheels
# for Linux are the CUDA builds (their nvidia-* dependencies are pinned in constraints.txt too).
COPY --chown=ray constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt torch torchvision

# Then the project and all its extras (data, teachers, train, sweep, cpu, bench, dev) at the pinned versions.
# Ray itself is already in the base image at the same version.
COPY --chown=ray . .
RUN pip install --no-cache-dir -c constraints.txt -e ".[all]"
