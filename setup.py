"""promptjax: continued pretraining and meta-learning that make T5 promptable, in JAX/Flax."""

import setuptools

# Mutually compatible versions for Python 3.11 (the full frozen set is requirements/constraints.txt).
INSTALL_REQUIRES = [
    'jax==0.10.2',
    'jaxlib==0.10.2',
    'flax==0.12.8',
    'optax==0.2.8',
    'orbax-checkpoint==0.12.8',
    'tensorstore',
    'seqio==0.0.20',
    'tensorflow==2.21.0',
    'tensorflow-text==2.21.1',
    'gin-config==0.5.0',
    'sentencepiece==0.2.3',
    'clu==0.0.12',
    'tensorboard==2.21.0',  # clu's SummaryWriter
    'numpy',
    'msgpack',
    'safetensors',
    'tqdm',
    # evaluation: CrossFit metrics (Classification-F1, Matthews; Pearson; Rouge-L) and report plots
    'scikit-learn',
    'scipy',
    'rouge-score',
    'matplotlib',
]

EXTRAS_REQUIRE = {
    # Reference implementations for the tests. torch must be the CPU build 2.13.0: an unpinned
    # `torch` pulls a multi-GB CUDA build.
    'test': [
        'pytest',
        'pytest-xdist',
        'torch==2.13.0',
        'transformers==4.57.6',
        # PEFT adapters of exported prompts (promptjax.checkpoints.peft) run by the real `peft`; 0.17.x's
        # PrefixTuning fails on transformers >= 4.56 (its cache API), 0.18.1 runs it.
        'peft==0.18.1',
    ],
}
EXTRAS_REQUIRE['hf'] = ['torch==2.13.0', 'transformers==4.57.6']

# Apache Beam for the SUPMER anchor meta-task construction (promptjax.supmer.construct). Beam's own
# metadata caps protobuf<7, pillow<13, pyarrow<26 and python-dateutil<3 (every release up to 2.77), below
# this stack's pins (sentencepiece 0.2.3's generated code needs the protobuf 7 runtime), so pip cannot
# resolve `apache-beam` next to them; Beam 2.77 runs with them (the DirectRunner pipeline and its tests).
# Hence: the `beam` extra installs Beam's runtime dependencies (resolvable), and Beam itself is installed
# without dependency resolution:
#   pip install -c requirements/constraints.txt -e '.[beam]'
#   pip install -c requirements/constraints.txt --no-deps apache-beam==2.77.0
BEAM_VERSION = '2.77.0'
EXTRAS_REQUIRE['beam'] = [
    'cryptography', 'fastavro', 'fasteners', 'httplib2', 'jsonpickle', 'objsize', 'pymongo', 'proto-plus',
    'pytz', 'sortedcontainers', 'zstandard', 'beartype', 'requests', 'pyyaml', 'pyarrow',
    'google-crc32c',  # TFRecord CRCs (Beam's tfrecord extra)
]

# T5X (Roberts et al. 2022) is not on the package registry: `make install` installs it (and AirIO and a
# jax-0.10-compatible JEstimator) with --no-deps from wheels built from their sources when ../shared/wheels
# exists, otherwise users install them from GitHub (README, "Using promptjax from T5X"). This extra holds
# the registry packages T5X's code and `python -m t5x.train` need next to the pins above.
EXTRAS_REQUIRE['t5x'] = ['grain==0.2.18', 'cloudpickle', 'portpicker', 'cached-property', 'fiddle', 'graphviz',
                         'libcst']

setuptools.setup(
    name='promptjax',
    version='0.1.0',
    description='Continued pretraining and meta-learning for promptable T5 models, in JAX/Flax.',
    packages=setuptools.find_packages(include=['promptjax', 'promptjax.*']),
    package_data={'promptjax.tasks': ['*.json', 'data/*', 'data/**/*'],
                  'promptjax': ['configs/*.gin', 'configs/**/*.gin', 'configs/README.md',
                                'configs/paper/ledger.json', 'configs/paper/LEDGER.md']},
    include_package_data=True,
    python_requires='>=3.11',
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={'console_scripts': ['promptjax=promptjax.cli:main', 'promptjax-demo=promptjax.demo:main']},
)
