"""fxpress's version, in a leaf module every layer may import.

The backend writes it into each artifact's manifest; reading it from the
package root would make the backend import the public API above it.
``fxpress.__version__`` re-exports it.
"""

__version__ = "0.1.0"
