"""The paper's formulas written out with loops in float64: what the tests compare the code with."""
import numpy as np


def np_log_softmax(v):
    return v - v.max() - np.log(np.exp(v - v.max()).sum())


def np_kl(s, t, T=1.0):
    """KL(softmax(t/T) || softmax(s/T)) with explicit loops, averaged over batch *and* classes
    (F.kl_div's 'mean', the author's reduction)."""
    B, C = s.shape
    total = 0.0
    for b in range(B):
        lp, lq = np_log_softmax(t[b] / T), np_log_softmax(s[b] / T)
        total += sum(np.exp(lp[c]) * (lp[c] - lq[c]) for c in range(C))
    return total / (B * C)


def np_at(s_acts, t_acts):
    """Sum over layers of the mean over batch and positions of (f_s - f_t)^2, f = the normalised
    channel mean of A^2."""
    at = 0.0
    for a_s, a_t in zip(s_acts, t_acts):
        total, B = 0.0, len(a_s)
        for b in range(B):
            fs, ft = (a_s[b] ** 2).mean(0).ravel(), (a_t[b] ** 2).mean(0).ravel()
            fs, ft = fs / np.sqrt((fs ** 2).sum()), ft / np.sqrt((ft ** 2).sum())
            total += sum((fs[i] - ft[i]) ** 2 for i in range(fs.size))
        at += total / (B * fs.size)
    return at


def hand_kd_at(s, t, y, s_acts, t_acts, alpha, T, beta):
    """(1-a) CE + 2 a T^2 KL + beta AT with explicit loops."""
    ce = sum(-np_log_softmax(s[b])[y[b]] for b in range(len(s))) / len(s)
    return (1 - alpha) * ce + 2 * alpha * T * T * np_kl(s, t, T) + beta * np_at(s_acts, t_acts)


def hand_normalize(images, mean, std):
    """uint8 (N, 3, H, W) -> (x / 255 - mean_c) / std_c, per channel c, in float64."""
    x = np.asarray(images, dtype=np.float64) / 255
    return (x - np.asarray(mean)[None, :, None, None]) / np.asarray(std)[None, :, None, None]
