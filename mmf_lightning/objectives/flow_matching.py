"""Plain flow matching: the r = t case of the MeanFlow loss, ``|| u(z_t, t, t) - v ||^2``."""

from mmf_lightning.objectives.meanflow import ModularMeanFlow
from mmf_lightning.objectives.paths import expand_like
from mmf_lightning.objectives.time_sampling import TimeSampler


class FlowMatching(ModularMeanFlow):
    """Flow matching (rectified flow) on the linear path.

    t is drawn from ``time_sampler.sample_t`` (its own distribution; ``equal_fraction`` is
    not used). The network is queried at r = t only, so sampling is Euler on the
    instantaneous velocity u(z, t, t): one step is a crude baseline, many steps the ODE.
    """

    uses_lambda = False

    def __init__(
        self,
        time_sampler: TimeSampler | None = None,
        label_dropout: float = 0.0,
        guidance_scale: float = 1.0,
    ):
        super().__init__(
            tangent="conditional",
            time_sampler=time_sampler or TimeSampler("uniform", equal_fraction=1.0),
            label_dropout=label_dropout,
            guidance_scale=guidance_scale,
        )

    def __call__(self, net, x, y=None, *, lam=0.0, step=0, e=None, path=None):
        t = self.time_sampler.sample_t(x.shape[0], x.device)
        return super().__call__(net, x, y, e=e, path=path, r=t, t=t)

    def jump(self, net, z, r, t, y=None, generator=None):
        return z - expand_like(t - r, z) * net(z, t, t, y)
